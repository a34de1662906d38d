"""People across cameras: link footage tracklets into people by appearance and time, and give each a timeline.

``constraints`` holds the rules (one camera at one time, one place at a time, travel takes time) and the camera
graph; ``cluster`` the constrained agglomerative clustering and the incremental assignment; ``timeline`` the
``Person`` and ``CameraVisit`` values; ``export`` the AI City / MOTChallenge box files; ``link`` the ``tfclip
link`` command's work; ``answer`` adds people and timelines to ``tfclip query``'s hits. Knows embeddings and
times; the only pixels it touches are the key frames ``answer`` reads for the HTML report.
"""
