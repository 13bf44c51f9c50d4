"""The lab: what benchmarks, the demo and the tests run beside the product, never shipped to a
device nor imported by the edge, the matcher or the exported models (an import contract of
`make lint`): a throwaway Mosquitto (:mod:`.mosquitto`), the demo's in-process broker
(:mod:`.embedded_broker`), a throwaway PostgreSQL (:mod:`.postgres_server`) and the
identity scorer of the benchmarks (:mod:`.scoring`)."""
