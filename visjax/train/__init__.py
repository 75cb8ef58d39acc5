"""Training engine: mesh.py (mesh, sharding rules, global batches), optim.py (AdamW rules, schedule),
checkpoint.py (orbax train checkpoints), trainer.py (train state, jitted step, loop), evaluate.py (eval split →
results + metrics), restore.py (weights for eval/predict, --mode convert), prepare.py (demo dataset preparation).
"""
