"""Test double of the jupyterhub package (only jupyterhub.orm is provided)."""
