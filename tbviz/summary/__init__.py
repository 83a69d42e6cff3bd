"""Everything that turns arrays into TensorBoard summaries: writers, image grids,
custom-scalar layouts and the metadata the tbviz dashboard reads."""
