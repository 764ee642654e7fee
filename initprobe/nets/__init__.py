"""Networks: the EDM-style UNet, its preconditioning, layer ids and checkpoints."""
