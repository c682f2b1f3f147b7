"""Node-pool catalogs and cluster-YAML provider sections. (Filled by the cluster issue.)"""
