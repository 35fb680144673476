"""Load and save models, graph helpers, the weight-layout view, input data and errors."""
