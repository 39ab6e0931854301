"""Beyond one device: the model's layers as pipeline stages on Ray actors (`--stages N`)."""
