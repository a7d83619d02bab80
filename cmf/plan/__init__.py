"""Planning: which codec tree each tensor gets (recipes, presets, and later error budgets)."""
