"""Detection: the detector protocol, backends, weighted boxes fusion and crops."""
