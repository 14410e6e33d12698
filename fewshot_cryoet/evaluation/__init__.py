"""How methods are measured: the episode runner (train once, score fixed test episodes), scoring
(accuracy, Dice, CRF), calibration and the statistics behind every interval and tie."""
