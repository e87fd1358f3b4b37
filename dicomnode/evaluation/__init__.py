"""Local evaluation: the node's results compared with radiologists' corrections that arrive as SEGs."""
