"""Pictures and reports: ``plots`` draws the figures (matplotlib), ``render`` fills the Jinja2 templates in
``templates/``, and one module per report gathers what it shows: ``training`` (a run's curves), ``evaluation``
(CMC, score distributions, camera pairs, worst queries), ``calibration`` (DET, genuine / impostor scores),
``query`` (ranked hits), ``compare`` (runs side by side). Imported only by the commands that draw, so ``tfclip --help`` stays instant.
"""
