"""The edge that changes a namespace: runner seam, backends, appliers, rollback, netns, lock, validation."""
