"""Fast ODE solvers over the samplers' contract: DPM-Solver++(2M), EDM's Heun and UniPC (bh2)."""
