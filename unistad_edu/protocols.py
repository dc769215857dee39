"""How per-class training is compared with unified training (torch-free, so the CLI's parser can list them).

Per-class training gives each category a model of its own; unified training one model for all K categories.
How many optimiser steps each per-class model gets decides what a comparison measures: lesson 03 shows the same
two settings ranked either way depending on the rule, and draws the whole curve under the fair one.
"""

ACCURACY_PROTOCOLS = {
    "equal-steps-per-category": "each per-class model takes the unified model's optimiser steps divided by the "
    "number of categories (whole epochs reaching them): the same training per product (lesson 03's rule)",
    "equal-steps": "each per-class model takes at least as many optimiser steps as the whole unified model",
    "equal-epochs": "each per-class model trains as many epochs as the unified one (the papers' usual protocol)",
}
