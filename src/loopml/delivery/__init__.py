"""Progressive delivery: rollouts of a candidate version through shadow and canary steps, with analysis."""
