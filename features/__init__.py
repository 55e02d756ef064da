"""From raw events to model-ready data: the event contract, adapters, the simulator and the feature job."""
