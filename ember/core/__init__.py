"""The ground floor every Ember package may import, and which imports nothing above it:
requests, the scheduled batch (with serialized token trees and KV copies), sampling
parameters and the sampler."""
