"""Few-shot methods (plugins); the method contract and built-ins arrive with the runner."""
