"""Pure: flags and env -> validated config -> plan. No I/O."""
