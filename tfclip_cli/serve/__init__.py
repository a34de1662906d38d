"""``tfclip serve``: a gallery search service over HTTP with a web page.

``service.py`` holds the state (the model and gallery loaded once, statistics) and turns uploads into clips;
``app.py`` is the FastAPI application, as thin as ``cli.py``; ``page/`` is the static web page. Gallery writes
are ``index``'s locked, atomic ones. Only this package imports fastapi and uvicorn.
"""
