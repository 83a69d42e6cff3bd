"""Fast neural style transfer (Johnson et al. 2016), instrumented with tbviz."""
