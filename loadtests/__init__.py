"""Locust users from an AppSpec, headless runs, tuner and reports. (Filled by the load-test issue.)"""
