"""The pipeline's stages as Ray programs: prepare, train (+ worker loop, checkpoints), index, evaluate, promote."""
