"""Dashboard: a Dash app that renders a BottleneckMap; it computes no diagnosis of its own."""
