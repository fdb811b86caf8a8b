"""The `onegen` console script: one module per command group, flags generated from the configs."""
