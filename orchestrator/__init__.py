"""exloop.orchestrator"""
