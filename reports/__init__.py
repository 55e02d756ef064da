"""What a marketer and a reviewer read of what happened: the journey map (`reports.journey_map`), the
campaign report (`reports.campaign`) and the evaluation plots (`reports.plots`), drawn and written with
one figure and one HTML helper (`reports.html`).

Reports read features builds (`training.data`), registered models through the predictor's interface
(`predictor`) and intervals from `stats`; nothing of training's models, and serving never imports them.
"""
