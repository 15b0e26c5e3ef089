-- Sensor readings outside their normal range, per location and sensor type.
SELECT location, sensor_type, count(*) AS readings_out_of_range, min(value) AS lowest, max(value) AS highest
FROM sensor_data
WHERE (sensor_type = 'temperature' AND (value < 0 OR value > 40))
   OR (sensor_type = 'humidity' AND (value < 10 OR value > 90))
   OR (sensor_type = 'pressure' AND (value < 950 OR value > 1050))
   OR (sensor_type = 'vibration' AND value > 10)
GROUP BY location, sensor_type
ORDER BY location, sensor_type;
