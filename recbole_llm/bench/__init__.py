"""The benchmark grid (Ray Tune) and the leaderboard built from its run records."""
