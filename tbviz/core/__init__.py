"""What the visualization methods share: finding layers and capturing their outputs, the
backward rules at activations, receptive fields, token grids, cached probes and argument checks."""
