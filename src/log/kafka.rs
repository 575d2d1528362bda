//! Apache Kafka implementation of the log (issue: distributed mode). Not yet written.
