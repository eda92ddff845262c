"""Test double of the nativeauthenticator package (only nativeauthenticator.orm)."""
