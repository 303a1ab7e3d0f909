"""Outside the wheel: labs and demos that drive the product from the outside (namespaces, containers)."""
