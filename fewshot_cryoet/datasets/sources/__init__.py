"""Sources of users' own particles (see ``base``); ``fsc import`` turns any of them into a data set."""
