"""explain, show, verify: reading rules back and saying what they do. Never imported by apply."""
