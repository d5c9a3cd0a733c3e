"""Test support shared by the test folders: servers, fakes, PKI, metric scraping."""
