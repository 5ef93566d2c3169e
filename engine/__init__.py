"""exloop.engine"""
