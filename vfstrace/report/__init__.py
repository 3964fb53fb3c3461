"""What people read: `analyze` summaries, correlated-event reports (text, HTML), Perfetto timelines."""
