"""Command groups of the ``cdp`` CLI, one module per group; ``cdp.cli`` assembles them."""
