"""Raw camera footage → person tracklets: detect people, track them, relink by appearance, write tracklets."""
