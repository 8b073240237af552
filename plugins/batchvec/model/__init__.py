"""The model a run embeds with: the ML Commons remote model and its connector (connectors,
blueprints/), and the SageMaker container code users deploy (container/)."""
