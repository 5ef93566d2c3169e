"""exloop.tools"""
