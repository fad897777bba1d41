"""The lecture report: the architectures' costs beside measured serving costs (build, then HTML)."""
