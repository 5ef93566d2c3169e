"""exloop.server"""
