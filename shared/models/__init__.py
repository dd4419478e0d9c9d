"""Models: config -> model, parameter counts and the Auto-class registration (registry); our own nanoGPT-style GPT
(gpt), the LSTM baseline (lstm) and the Mixtral router statistics (moe). Imports shared.config and shared.data,
never the Trainer: `import shared.models.registry` is what loading a checkpoint costs."""
