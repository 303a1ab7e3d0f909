"""Pure injection: policy, annotations, templates, merge, patch. No I/O beyond reading the config dir."""
