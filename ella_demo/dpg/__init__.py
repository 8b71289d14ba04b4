"""DPG-Bench: its data, image generation in the paper's grid layout, VQA answering, scoring, browsing."""
