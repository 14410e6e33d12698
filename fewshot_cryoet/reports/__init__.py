"""What people read: leaderboard tables, CSVs and plots from a results store, and segmentation
figures of a trained method."""
