"""A Flask + SQLAlchemy application publishing on commit through livesync's outbox (see README.md here).

``python -m examples.events_app [--smoke]`` from the checkout's root runs it with
everything it needs (:mod:`examples.events_app.run`).
"""
