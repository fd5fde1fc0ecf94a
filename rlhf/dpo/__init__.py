"""Direct preference optimisation: the loss family (losses), sequence log-probs (logps), the reference cache
(reference), the engine task (task) and the pair/unpaired encoders (data). The stage is stages/dpo.py."""
