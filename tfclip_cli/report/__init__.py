"""Pictures and HTML reports: matplotlib (Agg) figures and Jinja2 templates, fed with values, never the engine."""
