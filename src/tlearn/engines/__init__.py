"""A trained model at work: the inference engine both runtimes share, the torch and onnx engines, loading
either, and what the original ImageNet head says about images (the report's "before")."""
