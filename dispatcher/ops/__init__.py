"""Operations without a web framework: job listings, dashboard data, the route table,
start-up checks."""
